"""WeNet (conformer encoder + CTC, (bi)transformer attention decoder) written with our layers."""
