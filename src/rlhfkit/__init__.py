"""rlhfkit: the RLHF pipeline of InstructGPT and Llama 2 on any Hugging Face causal LM.

Importing the package is cheap: torch and transformers load only where a stage needs them.
"""

__version__ = "0.1.0"
