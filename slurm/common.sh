# Sourced by slurm/*.sbatch: environment, logging, signal forwarding and self-requeue.
#
# Stop protocol (see docs/slurm.md, "Preemption and time limits"):
# - SIGUSR1 (the `--signal=B:USR1@...` warning before the time limit, or
#   `scancel --signal=USR1 --batch`) is passed on to the training processes. They save a
#   checkpoint at the next log step and exit; this script then requeues the job, at most
#   DENOISE_DIST_MAX_REQUEUES times, and the restarted job resumes from that checkpoint.
# - SIGTERM (plain `scancel`, `scontrol requeue`, preemption, the time limit itself) is
#   passed on too, so training can checkpoint if it has time, but this script never
#   requeues after it: a plain scancel ends the job for good, and when Slurm requeues
#   (scontrol requeue, PreemptMode=REQUEUE) it restarts the job itself.

PYTHON=${DENOISE_DIST_PYTHON:-python}         # the environment's interpreter (venv/conda)
MAX_REQUEUES=${DENOISE_DIST_MAX_REQUEUES:-3}  # requeue after SIGUSR1 only below this many
                                              # restarts (all restarts count)
RESTART=${SLURM_RESTART_COUNT:-0}             # how often Slurm has restarted this job
export WANDB_MODE=${WANDB_MODE:-offline}      # compute nodes: no network; `wandb sync` later
export PYTHONUNBUFFERED=1                     # log lines appear in the job log as they happen
export COLUMNS=${COLUMNS:-120}                # wider rich tables in the log file

# GPUs Slurm gave this node. SLURM_GPUS_ON_NODE is set however they were asked for
# (--gres=gpu:N, --gpus-per-node=N, --gpus=N); SLURM_GPUS_PER_NODE only for
# --gpus-per-node, and as "type:N" when a type was named. No GPUs: 1 (one CPU process).
gpus_on_node() {
    local count=${SLURM_GPUS_ON_NODE:-${SLURM_GPUS_PER_NODE:-1}}
    count=${count##*:}
    [ "$count" -gt 0 ] 2>/dev/null && echo "$count" || echo 1
}

# The rendezvous port of a multi-node job, from its id (two jobs on a node differ), in
# 10000-29999: below Linux's ephemeral range (32768-60999 by default), so no outgoing
# connection on the node can hold it.
rendezvous_port() {
    echo $((10000 + ${1:-$SLURM_JOB_ID} % 20000))
}

log() {
    echo "[denoise-dist job ${SLURM_JOB_ID:-?} restart ${RESTART}] $(date '+%F %T') $*"
}

log_header() {  # $1 = run folder
    log "on ${SLURM_JOB_NODELIST:-$(hostname)}: run folder $1," \
        "data ${DENOISE_DIST_DATA:-(--data-dir or ./data)}, WANDB_MODE=$WANDB_MODE," \
        "python $(command -v "$PYTHON" || echo "$PYTHON (not found)")"
}

# `accelerate launch`/torchrun start their workers in new sessions, so a process-group
# kill would miss them: signal the whole process tree below the launched command.
descendants() {
    local child
    for child in $(pgrep -P "$1"); do
        echo "$child"
        descendants "$child"
    done
}

signal_tree() {  # $1 = signal, $2 = root pid
    kill -s "$1" "$2" $(descendants "$2") 2>/dev/null || true
}

GOT_USR1="" GOT_TERM="" TRAIN_PID="" RESENDER=""

on_usr1() {
    GOT_USR1=1
    log "SIGUSR1: asking training to checkpoint and stop"
    [ -n "$TRAIN_PID" ] && signal_tree USR1 "$TRAIN_PID"
    # A request that lands before the trainer has installed its handler is ignored
    # (see start_training), so repeat it until training has stopped.
    if [ -z "$RESENDER" ] && [ -n "$TRAIN_PID" ]; then
        (trap - USR1 TERM; while sleep 15; do signal_tree USR1 "$TRAIN_PID"; done) &
        RESENDER=$!
    fi
}

on_term() {
    GOT_TERM=1
    log "SIGTERM: the job is being cancelled, requeued or preempted by Slurm"
    [ -n "$TRAIN_PID" ] && signal_tree TERM "$TRAIN_PID"
}

trap on_usr1 USR1
trap on_term TERM

# Run the training command in the background (a trap only runs between commands, and
# `wait` returns as soon as one arrives). Launchers start with SIGUSR1 ignored so that a
# forwarded SIGUSR1 cannot kill them; the trainer installs its own handler over that.
start_training() {
    log "starting: ${*%%$'\n'*}"  # leaves out srun's multi-line task script
    (trap '' USR1; exec "$@") &
    TRAIN_PID=$!
    if [ -n "$GOT_USR1" ]; then on_usr1; fi  # it came during setup: pass it on now
}

# Wait for training, then requeue only if SIGUSR1 asked it to stop and it did not
# finish. Exits the batch script with the training's status.
finish_training() {
    while kill -0 "$TRAIN_PID" 2>/dev/null; do
        wait "$TRAIN_PID"
    done
    wait "$TRAIN_PID"  # bash keeps the exit status of a reaped background job
    local status=$?
    [ -n "$RESENDER" ] && signal_tree TERM "$RESENDER"
    if [ "$status" = 0 ]; then
        log "training finished"
    elif [ -n "$GOT_TERM" ]; then
        log "training exited with status $status after SIGTERM; not requeueing"
    elif [ -n "$GOT_USR1" ] && [ "$RESTART" -lt "$MAX_REQUEUES" ]; then
        log "training stopped with status $status after SIGUSR1; requeueing" \
            "(restart $((RESTART + 1)) of at most $MAX_REQUEUES)"
        scontrol requeue "$SLURM_JOB_ID" || log "scontrol requeue failed"
    elif [ -n "$GOT_USR1" ]; then
        log "training stopped after SIGUSR1, but the job has already been restarted" \
            "$RESTART times (DENOISE_DIST_MAX_REQUEUES=$MAX_REQUEUES); not requeueing." \
            "Resubmit with the same DENOISE_DIST_OUTPUT to continue."
    else
        log "training failed with status $status"
    fi
    exit "$status"
}
