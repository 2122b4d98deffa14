/* The line-program fixture: scale() inlined into middle(), itself inlined into outer(). */
volatile int sink;

static inline __attribute__((always_inline)) int scale(int x)
{
	sink = x; /* INSIDE scale */
	return x * 3 + sink;
}

static inline __attribute__((always_inline)) int middle(int x)
{
	int y = scale(x + 1); /* CALLS scale */
	return y - 2;
}

int outer(int x) /* DEFINES outer */
{
	int r = middle(x); /* CALLS middle */
	sink = r;
	return r + 1;
}

void _start(void)
{
	outer(sink);
	for (;;)
		;
}
