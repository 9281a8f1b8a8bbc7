"""Models of the plugin, in the layout `LMMS_EVAL_PLUGINS` expects (`{name: class}` of `.models.{name}`)."""

AVAILABLE_MODELS = {"illume": "IllumeLMMs"}
