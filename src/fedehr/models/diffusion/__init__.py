"""Diffusion generators: EHRDiff (EDM + MLP on flat vectors) and CDMT-EHR (continuous-time mixed-type BiGRU).

Each generator file is config + ``build`` + ``objective`` + ``sample``; ``edm`` holds the shared EDM pieces,
``channels`` / ``codes`` the data encodings. See docs/diffusion.md.
"""
