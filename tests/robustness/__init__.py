"""What users do that they should not, and what the machine does to a run: bad inputs
(preprocess, train), hostile and untrusted files, a fuzz pass, model bounds, non-finite values,
one line instead of a traceback, outputs that are inputs, interruptions (preprocess, train),
signals and a full disk, two processes on one output."""
