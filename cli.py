#!/usr/bin/env python
"""Launcher, as Django's manage.py: ``python cli.py ARGS`` does what the installed ``edgehydra ARGS`` does."""
from edgehydra.commands import main

if __name__ == "__main__":
    main()
