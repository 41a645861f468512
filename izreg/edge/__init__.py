"""The gateway side: ``twistd izreg edge``, a verified pull-through cache in front of the registry."""
