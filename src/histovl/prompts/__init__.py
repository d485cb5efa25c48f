"""Prompt sets: per-class descriptions x templates, as versioned YAML files.

Example:
    >>> from histovl.prompts import load_prompt_set
    >>> ps = load_prompt_set("lung-he-v1")
    >>> ps.prompts_for("lung_n")[0]
    'an H&E stained image of benign lung tissue.'
"""

from histovl.prompts.loading import list_prompt_sets, load_prompt_set, prompt_set_from_mapping
from histovl.prompts.prompt_set import PromptSet, PromptSetError

__all__ = [
    "PromptSet",
    "PromptSetError",
    "list_prompt_sets",
    "load_prompt_set",
    "prompt_set_from_mapping",
]
