"""The recommender's runtime: learner processes, each holding the shards of its partitions."""
