"""The bundled demo model: data preparation, tokenizer training and the training script.

``python -m moe_tui.demo.train`` rebuilds ``samples/demo-mixtral`` from text that ships with every Python
install (the reference topics in ``pydoc_data.topics`` and standard-library docstrings).
"""
