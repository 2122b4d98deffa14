#include "types.h"

struct opaque {
	int secret;
	struct opaque *next;
};

struct opaque the_opaque;

int use_b(void) { return the_opaque.secret + counter; }

int counter = 7;
