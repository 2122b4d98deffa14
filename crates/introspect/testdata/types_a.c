/* Test fixture for the DWARF reader: C types of every kind the reader handles.
 * Built by build.sh into small static ELF executables (DWARF 2, 4 and 5). */
#include "types.h"

struct flags {
	unsigned int a : 3;
	unsigned int b : 5;
	signed int c : 7;
	unsigned long wide : 40;
	unsigned char tail;
};

union either {
	unsigned long word;
	unsigned char bytes[8];
	struct { unsigned short lo, hi; } halves;
};

enum signedness { NEG = -2, ZERO = 0, BIG = 100000 };
enum small { SMALL_A = 1, SMALL_B = 255 };

typedef struct { int x, y; } point_t;

struct holder {
	const volatile int cv;
	int grid[2][3];
	point_t where;
	struct opaque *later;           /* declared here, defined in types_b.c */
	int (*callback)(int, char *);
	union either u;
	enum signedness sign;
	struct flags f;
	unsigned int count;
	long flex[];
};

struct holder *the_holder;
int matrix[4][5][6];
struct flags some_flags = { 1, 2, -3, 4, 5 };
enum small small_value = SMALL_B;
point_t origin;
int zero_len[0];

int use_a(struct holder *h) { return h->count + h->grid[1][2]; }

void _start(void)
{
	static int local_static;
	local_static = use_a(the_holder) + use_b() + matrix[1][2][3];
	for (;;)
		;
}
