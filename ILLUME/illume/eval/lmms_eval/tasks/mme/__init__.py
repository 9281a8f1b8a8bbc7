"""MME task config of the plugin (`mme_nopost.yaml`) and its helpers."""
