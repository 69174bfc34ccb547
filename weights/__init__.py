"""Loading a WeNet model dir: checkpoint, train.yaml, CMVN, vocabulary, and the exact key mapping."""
