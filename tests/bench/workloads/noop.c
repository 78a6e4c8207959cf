/* The short program workload 3 executes (linked static: no loader work). */
int main(void)
{
	return 0;
}
