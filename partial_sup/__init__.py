"""Training, evaluation and model versions on top of mnc_core, reading data through a dataset interface.

(Mask^X R-CNN style partial supervision builds here: classes with boxes only still get masks.)
"""
