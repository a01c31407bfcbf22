#!/bin/sh
# Stand-in for gitlab-runner-helper inside the runner-driver emulated cluster.
# Cache commands really archive and extract local files (tar, not zip); artifact
# commands only report what they would transfer: there is no GitLab to talk to.
set -eu
say() { printf '%s\n' "$*" >&2; }
cmd="${1:-}"
[ $# -gt 0 ] && shift
case "$cmd" in
  --version|-v|version)
    echo "Version:      emulated (runner-driver stand-in for gitlab-runner-helper)"
    ;;
  cache-archiver)
    file=""; paths=""
    while [ $# -gt 0 ]; do
      case "$1" in
        --file) file="$2"; shift 2 ;;
        --path) paths="$paths $2"; shift 2 ;;
        --untracked) shift ;;
        --url|--header|--timeout|--max-uploaded-archive-size|--compression-level|--compression-format|--gocloud-url|--metadata) shift 2 ;;
        *) shift ;;
      esac
    done
    [ -n "$file" ] || { say "cache-archiver: missing --file"; exit 1; }
    mkdir -p "$(dirname "$file")"
    # shellcheck disable=SC2086
    tar -cf "$file" $paths 2>/dev/null || tar -cf "$file" --files-from /dev/null
    say "Created cache (emulated stand-in: tar archive at $file)"
    ;;
  cache-extractor)
    file=""
    while [ $# -gt 0 ]; do
      case "$1" in
        --file) file="$2"; shift 2 ;;
        --url|--timeout|--gocloud-url) shift 2 ;;
        *) shift ;;
      esac
    done
    if [ -n "$file" ] && [ -f "$file" ]; then
      tar -xf "$file"
      say "Successfully extracted cache (emulated stand-in)"
    else
      say "No URL provided, cache will not be downloaded from shared cache server. Instead a local version of cache will be extracted."
      say "Cache file does not exist (emulated stand-in)"
      exit 1
    fi
    ;;
  artifacts-uploader|artifacts-downloader)
    say "$cmd: emulated stand-in; nothing is transferred (no GitLab in the emulated cluster)"
    ;;
  read-logs)
    say "read-logs: not emulated"; exit 1
    ;;
  *)
    say "gitlab-runner-helper (emulated stand-in): unknown command '$cmd'"; exit 1
    ;;
esac
