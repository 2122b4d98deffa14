struct opaque;
extern int counter;
int use_b(void);
