"""The `suanwang bench` commands: each prints figures and ratios measured in the same run, never asserts a time."""
