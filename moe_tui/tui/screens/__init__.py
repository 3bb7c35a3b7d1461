"""The app's screens: main dashboard, loading, error, help, generation settings, cache lab and small dialogs."""
