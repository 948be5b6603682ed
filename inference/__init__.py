"""Inference: driving a person (a fine-tuned or feed-forward ``training.person.Person``) with another video.

``adapt.py`` moves a driver's expression and head motion onto the person's own landmarks; ``video.py`` reads
driver videos, tracks their face, and writes browser-playable H.264 mp4 files. ``reenact.py`` at the top level
is the command that joins them.
"""
