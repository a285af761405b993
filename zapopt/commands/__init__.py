"""The ``zapopt`` commands, one module per family; ``cli.py`` imports them to register them."""
