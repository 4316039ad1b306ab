"""The evaluation sets the recorded results use, named once: the SQuAD 2.0 slice beside the checkout (3 articles
to tune and fit on, 7 held out) and SQuAD v1.1 dev without the 19 SQuAD 2.0 dev articles the adapters train on."""

SLICE = "../shared/data/squad2-dev-slice.json"
TUNE_ARTICLES = "Huguenot,European_Union_law,Yuan_dynasty"
TRAIN_ARTICLES = ("Southern_California,Sky_(United_Kingdom),Victoria_(Australia),Oxygen,Amazon_rainforest,Ctenophora,"
                  "Fresno,_California,Black_Death,Geology,Pharmacy,Civil_disobedience,Construction,Private_school,"
                  "Jacksonville,_Florida,Economic_inequality,University_of_Chicago,"
                  "Intergovernmental_Panel_on_Climate_Change,Prime_number,Rhine")
SLICE_TUNE = f"{SLICE}?articles={TUNE_ARTICLES}"
SLICE_HELDOUT = f"{SLICE}?exclude-articles={TUNE_ARTICLES}"
V11_DEV_29 = f"squad-v1.1-dev?exclude-articles={TRAIN_ARTICLES}"
