"""graphprune with other frameworks' own tools (``graphprune.integrations.ultralytics``: fine-tune, save and
deploy pruned ultralytics models). Each submodule imports its framework; this package imports none."""
