/* placeholder until the CLI lands */
#include <stdio.h>
int main(void) { fprintf(stderr, "moat: not built yet\n"); return 1; }
