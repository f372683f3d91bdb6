"""Running an evaluation: the runner that takes a run from examples to scores in the store, and the sandbox that runs generated programs."""
