"""Running built engines: audio front end, Sessions, WeNet runners and decoding."""
