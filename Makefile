# The two commands of the README:
#   make demo   - set up what is missing, start the real services and run Wharf's main job
#   make test   - set up what is missing, start the real services on test ports, run the tests
.PHONY: demo test setup
STAMP := .venv/.wharf-installed

setup: $(STAMP)

$(STAMP): pyproject.toml scripts/setup.sh
	bash scripts/setup.sh
	touch $@

demo: setup
	.venv/bin/wharf demo

test: setup
	bash scripts/test.sh $(PYTEST_ARGS)
