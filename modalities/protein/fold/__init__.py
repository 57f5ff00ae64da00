"""Structure prediction: an ESMFold-style folding head trained on PDB/mmCIF structures.

    geometry.py / losses.py / metrics.py   frames, FAPE, distogram and pLDDT losses; lDDT, TM, GDT, RMSD
    prediction.py                          FoldPrediction (what any folder returns) and the PDB writer
    head.py / task.py / predictor.py       the folding head, the ``fold`` fine-tuning task, inference
"""
