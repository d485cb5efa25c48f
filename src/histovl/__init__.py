"""histovl: a vision-language toolkit for histopathology.

The public Python API mirrors the CLI: every `histovl <command>` has a function of the same name.
"""

__version__ = "0.1.0"
