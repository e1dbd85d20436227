/* A shared object that is not a latchkey backend. */
__attribute__((visibility("default"))) int not_a_backend = 1;
