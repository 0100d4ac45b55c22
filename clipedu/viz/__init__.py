"""What the notebooks draw: pure functions that compute it, and the plots and widgets built on them.

Each widget is a thin wrapper: the sliders call a pure function (tested directly) and draw its
result. Modules: ``training`` (loss and temperature curves), and one module per notebook topic.
"""
