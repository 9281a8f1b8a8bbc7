"""lmms-eval task configs of the plugin (YAML + helpers); lmms-eval scans this folder for tasks."""
