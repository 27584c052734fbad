"""Benchmarks, measured side by side in one process: ``python -m rfcx_lightning.bench [options] [overrides]``.

Every figure is a ratio of two implementations timed alternately on the same inputs, so machine load
affects both alike. Absolute numbers are printed too, but only GPU absolutes belong in BENCHMARKS.md.
One module per benchmark:

* ``frontend``: log-mel with the FFT STFT versus torchlibrosa's Conv1d STFT and nnAudio, and its share of
  a training step;
* ``training``: throughput of the full data path over the same batches pre-made on the device (is the accelerator busy?);
* ``layout``: training steps with channels-last convolution weights versus the plain layout;
* ``inference``: whole-recording inference versus 0.5 s sliding windows (speed and LWLRAP);
* ``audio``: int16 cache build versus ``librosa.load``; crop reads from the cache versus decoding FLAC;
* ``memory``: peak memory of a training run at two dataset sizes;
* ``scaling``: ``preset=smoke`` with 1 and 2 DDP processes on CPU;
* ``detect``: ``stage=detect`` audio hours per wall hour, and its memory on a long file.
"""

from .cli import BENCHMARKS, main, run_benchmarks
from .frontend import bench_frontend

__all__ = ["BENCHMARKS", "bench_frontend", "main", "run_benchmarks"]
