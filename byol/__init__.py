"""BYOL Studio's library: BYOL self-supervised training of a CIFAR ResNet-18, and what inspects it.

Nothing here imports streamlit; the dashboard in app.py and pages/ only renders what these
modules compute. Start reading at train.py.
"""
