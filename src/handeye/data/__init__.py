"""Data in: the embedded demo dataset, video decoding, EPIC-KITCHENS annotations, frame extraction and dedup.

Stages ``demo-data`` (demo_data) and ``extract-frames`` (frames); ``epic`` and ``video`` are read by the
features stage too.
"""
