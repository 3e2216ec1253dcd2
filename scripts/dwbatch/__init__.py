"""doubleword-batch: run large asynchronous LLM jobs through the Doubleword batch API.

The scripts in the folder above are thin command lines over the modules here, one concern
per module, so that agents writing Python can import the same functions the scripts use.
"""

__version__ = "0.1.0"
