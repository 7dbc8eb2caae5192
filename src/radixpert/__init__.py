"""radixpert: radiology vision-language models, from native datasets to ranked reports.

Importing this package loads no torch and no metric model; each stage imports its heavy
dependencies where it runs.
"""

__version__ = "0.1.0"
