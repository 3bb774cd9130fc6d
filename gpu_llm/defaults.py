"""Every setting's default, by name: a re-export of gpu_llm.settings.DEFAULTS.

Settings (name, type, default, validation, doc) are declared once, as the fields of gpu_llm.settings.Settings.
"""

from gpu_llm.settings import DEFAULTS

__all__ = ["DEFAULTS"]
