"""Inference: driving a person (fine-tuned, feed-forward, one-shot HeadGAN, or exported) with another face.

``persons.py`` turns what the user hands a command into a person; ``adapt.py`` moves a driver's expression and
head motion onto the person's own landmarks; ``video.py`` reads driver videos, tracks their face, and writes
browser-playable H.264 mp4 files; ``headgan.py`` is HeadGAN's one-shot reenactment; ``export.py`` writes a person
as ONNX and runs it with onnxruntime; ``live.py`` animates a person frame by frame from a camera, stream or file.
``reenact.py`` at the top level is the command that joins them.
"""
