"""The planted-bug run shared by the Python kernel models (grouped_gemm_model.py,
grouped_gemm_tma_dw_model.py, grouped_gemm_pair_model.py): each named bug is switched on alone, the model's suite must fail
on it (an assertion or an out-of-bounds read), and the run fails if any bug goes unnoticed. A
model that cannot catch a bug of the kind it exists for is not checking that part."""
import contextlib
import io


def check_planted(bugs, active, suite):
    """bugs: name -> what it breaks; active: the model's set of switched-on bug names; suite: the model's checks."""
    caught = 0
    for name, what in bugs.items():
        active.clear()
        active.add(name)
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                suite()
        except (AssertionError, IndexError) as err:
            caught += 1
            print(f'caught   {name}: {what} ({str(err)[:90]})')
            continue
        print(f'MISSED   {name}: {what}')
    active.clear()
    print(f'{caught} of {len(bugs)} planted bugs caught')
    assert caught == len(bugs)
