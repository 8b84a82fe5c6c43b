"""The worker's HTTP views and who may call them; `streams.web.views` registers them all."""
