"""One lock for the work that makes transformers import its modules for the first time in a worker thread.

transformers 5 resolves ``from transformers import X``, and each model family's code, lazily on first use, and
that resolution is not thread-safe: a thread that asks for a name while another is importing the module behind
it gets "ImportError: cannot import name 'AutoConfig' from 'transformers'". The app does such work in several
threads at once (loading a model, describing the models the picker lists, building the parameter tree), so
each holds this lock while it does: importing transformers, loading a tokenizer, reading a config and building
a model on the meta device. None of these holds it for long, and it is reentrant, so one can call another.
"""

from __future__ import annotations

import threading

TRANSFORMERS_IMPORTS = threading.RLock()
