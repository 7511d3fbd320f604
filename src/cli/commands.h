/* The subcommands of the svdiff CLI: each takes the argv that follows `svdiff` (argv[0] is
 * the command's name) and returns the process exit code. */
#ifndef SVDIFF_CLI_COMMANDS_H
#define SVDIFF_CLI_COMMANDS_H

#include <stdio.h>

int cmd_attention_leakage(int argc, char **argv);
int cmd_compare(int argc, char **argv);
int cmd_convert_model(int argc, char **argv);
int cmd_eval(int argc, char **argv);
int cmd_edit(int argc, char **argv);
int cmd_generate(int argc, char **argv);
int cmd_grid(int argc, char **argv);
int cmd_info(int argc, char **argv);
int cmd_init(int argc, char **argv);
int cmd_selfcheck(int argc, char **argv);
int cmd_shifts(int argc, char **argv);
int cmd_tokenize(int argc, char **argv);
int cmd_tokenizer_train(int argc, char **argv);
int cmd_train(int argc, char **argv);
int cmd_pretrain(int argc, char **argv);
/* The flag parser and run of `svdiff train` (pretrain 0) and `svdiff pretrain` (1): train.c. */
int train_cli(int argc, char **argv, int pretrain);
void print_version(FILE *f);

#endif
