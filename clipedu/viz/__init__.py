"""What the notebooks draw: plots and widgets, and nothing else.

The numbers come from the module of the idea they show (``viz.interpret`` draws what
:mod:`clipedu.interpret` computes, ``viz.geometry`` what :mod:`clipedu.geometry` computes, ...);
``viz.images`` puts any image on screen. A widget is a thin wrapper: its sliders call a pure
function (tested directly) and draw the result. Only the notebooks and the command line import viz.
"""
