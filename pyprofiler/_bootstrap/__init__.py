"""The directory `python -m pyprofiler run` puts first on PYTHONPATH: its sitecustomize starts
pyprofiler in every Python process of the program. A package only so that it installs."""
