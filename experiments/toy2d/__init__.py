"""The 2-D toy studies: `run` (issue 15: lookahead vs drifting), `fit` (issue 11: do the toy
generators fit?). README.md has the results and the commands."""
