"""moe-tui: chat with an offloaded Mixture-of-Experts model and watch its experts, cache and memory live."""

__version__ = "0.1.0"
