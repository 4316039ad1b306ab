"""The evaluation sets the recorded results use, named once: the built-in SQuAD 2.0 slice (its 3 tuning articles to
tune and fit on, its 7 held-out articles) and SQuAD v1.1 dev without the 19 SQuAD 2.0 dev articles the adapters
train on (squad2-dev-train)."""

TRAIN_ARTICLES = ("Southern_California,Sky_(United_Kingdom),Victoria_(Australia),Oxygen,Amazon_rainforest,Ctenophora,"
                  "Fresno,_California,Black_Death,Geology,Pharmacy,Civil_disobedience,Construction,Private_school,"
                  "Jacksonville,_Florida,Economic_inequality,University_of_Chicago,"
                  "Intergovernmental_Panel_on_Climate_Change,Prime_number,Rhine")
SLICE_TUNE = "squad2-slice?split=tune"
SLICE_HELDOUT = "squad2-slice?split=heldout"
V11_DEV_29 = f"squad-v1.1-dev?exclude-articles={TRAIN_ARTICLES}"
