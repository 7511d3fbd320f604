/* `svdiff pretrain`: full-weight training of a whole model on a captioned data set (TSV), the
 * verb that trains the embedded default model. The flags and the run are shared with `svdiff
 * train` (train.c, train_cli); this file only names the verb. */
#include "cli/commands.h"

int cmd_pretrain(int argc, char **argv) { return train_cli(argc, argv, 1); }
