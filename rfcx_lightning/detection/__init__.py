"""Detection on new recordings (``stage=detect``): a finished workspace's models over a folder of audio.

``audio`` streams files of any rate, channel count and length; ``data`` cuts the run's prediction windows
from that stream; ``events`` chooses per-class thresholds on the TP/FP boxes and merges frames into events;
``stage`` runs it all through ``Trainer.predict`` (resumable, DDP) and writes the outputs.
"""

from .stage import DetectError, DetectStage

__all__ = ["DetectError", "DetectStage"]
