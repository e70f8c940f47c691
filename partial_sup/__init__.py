"""Partial supervision, the method only: Mask^X R-CNN's weight transfer (``maskx``), so that classes
labelled with boxes only still get masks, and GrabCut masks for boxes (``grabcut``).

Training from the database, proposals and evaluation that use it live in ``services/``.
"""
