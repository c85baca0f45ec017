# Sourced by paper_regime.sh and paper_regime_arm.sh: the settings every paper-regime run of TASK shares.
#
#   paper_regime_task TASK   # checks TASK has a config; sets tune_steps, and the LoRA+ arms' ratios
#                            # ratio_loraplus (Init[1]) and ratio_loraplus_init2 (Init[2])
paper_regime_task() {
  [ -f "results/paper_regime/$1.yaml" ] || { echo "no results/paper_regime/$1.yaml; use mnli, qnli, qqp or sst2" >&2; exit 2; }
  tune_steps=250                          # about one epoch of the 3-epoch tasks
  [ "$1" = sst2 ] && tune_steps=176       # one epoch of its 5,604 training sentences
  ratio_loraplus=4                        # the paper's 2^2-2^3 for Init[1]
  ratio_loraplus_init2=16                 # the paper's 2^4 for Init[2]
}
