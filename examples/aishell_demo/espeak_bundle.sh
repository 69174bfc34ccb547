#!/usr/bin/env bash
# A copy of this machine's espeak-ng that runs where none is installed (the GPU machine, for
# `prepare.py --synthesize_only --espeak OUT/espeak-ng`): the program, libespeak-ng and libsonic, the Mandarin data,
# and a no-op libpcaudio in place of the audio-output library, which `--stdout` never calls and whose real build
# pulls in PulseAudio and ALSA. Needs a C compiler here and glibc >= 2.34 there.
#     examples/aishell_demo/espeak_bundle.sh OUT
set -euo pipefail
out=$1
program=$(command -v espeak-ng)
library=$(ldd "$program" | awk '/libespeak-ng/ {print $3}')
sonic=$(ldd "$library" | awk '/libsonic/ {print $3}')
data=$("$program" --version | sed -n 's/.*Data at: //p')
mkdir -p "$out/lib" "$out/espeak-ng-data/lang" "$out/espeak-ng-data/voices"
cp "$program" "$out/lib/espeak-ng"
cp -L "$library" "$out/lib/libespeak-ng.so.1"
cp -L "$sonic" "$out/lib/libsonic.so.0"
cp "$data"/{phontab,phonindex,phondata,intonations,cmn_dict} "$out/espeak-ng-data/"
cp -r "$data/lang/sit" "$out/espeak-ng-data/lang/"
cp -r "$data/voices/!v" "$out/espeak-ng-data/voices/"
cc -shared -fPIC -o "$out/lib/libpcaudio.so.0" -x c - <<'C'
#include <stddef.h>
struct audio_object;
struct audio_object *create_audio_device_object(const char *d, const char *a, const char *n) { return NULL; }
int audio_object_open(struct audio_object *o, int format, unsigned rate, unsigned char channels) { return -1; }
void audio_object_close(struct audio_object *o) {}
void audio_object_destroy(struct audio_object *o) {}
int audio_object_write(struct audio_object *o, const void *data, size_t bytes) { return -1; }
int audio_object_drain(struct audio_object *o) { return -1; }
int audio_object_flush(struct audio_object *o) { return -1; }
const char *audio_object_strerror(struct audio_object *o, int error) { return "no audio output in this copy"; }
C
cat > "$out/espeak-ng" <<'SH'
#!/bin/sh
here=$(dirname "$(readlink -f "$0")")
LD_LIBRARY_PATH="$here/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" exec "$here/lib/espeak-ng" --path="$here" "$@"
SH
chmod +x "$out/espeak-ng"
echo "$out/espeak-ng: $("$out/espeak-ng" --version | sed "s/ *Data at.*//")"
